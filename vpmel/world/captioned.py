"""The Detective base's captioned pretraining scenes (:mod:`vpmel.detective.pretraining`, kind
``captioned``): image-caption pairs planned by this world's generator over a KB's entities,
from a world seed no VPWiki world uses, never with one of the world's own captions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from vpmel.world.emoji import Emoji, load_catalogue
from vpmel.world.generate import RecordPlan, WorldConfig, plan_record, plan_world

CAPTIONED_SEED_OFFSET = 2_000_003  # captioned scenes: a world seed no VPWiki world uses


class CaptionedScenes:
    """The captioned kind's source: scenes and captions planned by the demo world's generator
    over the KB's entities (those with an image), from the world seed plus
    :data:`CAPTIONED_SEED_OFFSET` plus the corpus seed, every caption about the scene shown.
    ``forbidden`` holds the world's own captions (``plan_world(world)``), never written."""

    def __init__(self, kb: pd.DataFrame, pool: np.ndarray, world: WorldConfig, seed: int) -> None:
        """``kb``: the KB table (rows in corpus order); ``pool``: the rows with an image;
        ``seed``: the corpus seed (the held-out corpus gets other scenes)."""
        catalogue = {e.qid: e for e in load_catalogue()}
        self.entities = [
            catalogue.get(str(row.qid))
            or Emoji(str(row.qid), (), str(row.name), str(row.name), "", "", "", str(row.type))
            for row in kb.itertuples(index=False)
        ]
        self.index_of = {e.qid: i for i, e in enumerate(self.entities)}
        self.candidates = [self.entities[int(i)] for i in pool]
        self.by_subgroup: dict[str, list[Emoji]] = {}
        for e in self.candidates:
            self.by_subgroup.setdefault(e.subgroup, []).append(e)
        offset = CAPTIONED_SEED_OFFSET + seed
        self.world = replace(world, seed=world.seed + offset, unrelated_rate=0.0)
        self.forbidden = frozenset(r.caption for r in plan_world(world).records)
        self.scene_size = (self.world.scene_width, self.world.scene_height)

    def record(self, index: int, subject: int) -> RecordPlan:
        """The planned pair whose first mention is KB entity ``subject``."""
        return plan_record(
            index, self.entities[subject], self.world, self.candidates, self.by_subgroup
        )
