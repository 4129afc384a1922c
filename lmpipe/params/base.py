"""What every params section shares: the frozen, extra-forbidding pydantic base and the names the
schema checks against (lmpipe.shifts and lmpipe.world hold the code behind them; a test keeps these
in step), so the schema imports nothing heavier than pydantic and yaml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# keeps these in step), so this module imports nothing heavier than pydantic and yaml.
ENCODING_NAMES = ("leet", "rot13", "reverse", "typos")
# Shifts that change the label (negation mirrors it): defined only for an ordered polarity task.
LABEL_MAPPING_SHIFTS = ("negation",)
MAX_FACTS = 60  # people in the world's name list, each fact needs one
