"""Stage sft: instruction tuning of the base LM with refusals on the world's restricted facts.

conversations  the training and validation conversations made from the safety request set
training       tokenization with an assistant-only loss mask, the HF Trainer run, the metrics
"""
