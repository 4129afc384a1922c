"""Fine-tuning the pretrained body as a classifier: what `stages.finetune` runs.

    classifier.py  the tokenizer, the classifier and its training method (full, freeze, LoRA presets)
    task.py        the labelled task, augmentation, encoding and the resolved max_length
    trainer.py     the HF Trainer with the replay loss, its curves, and the run's metrics
"""
