"""What providers keep per process rather than per session: embedded models, loaded before
serving, and SDK clients shared by every session (and the tool executors' connections),
closed when the app stops."""

from __future__ import annotations

import sys

from gateway.audio.endpointing import SmartTurnModel
from gateway.config import TurnDetector, VADProvider
from gateway.inference import POOL
from gateway.pipeline import Pipeline, chains


def preload(pipeline: Pipeline) -> None:
    """Load every provider's per-process state of `pipeline` (and its fallbacks) and its
    end-of-turn model, and start the inference pool's workers, so the first session does not
    pay for loading a model or starting a thread. Blocking: run it on a worker thread. (The
    VAD is the app's: `VADModels.preload`.)"""
    for blocks in chains(pipeline).values():
        for block in blocks:
            block.preload()
    if pipeline.turns.detector is TurnDetector.SMART_TURN and pipeline.vad.provider is not (
        VADProvider.NONE
    ):
        SmartTurnModel(pipeline.turns.model).preload()
    POOL.start()


async def close_shared() -> None:
    """Close the provider clients and tool executors' connections this event loop's sessions
    shared (at the app's shutdown). Only modules already imported can hold any: nothing is
    imported to close nothing."""
    for name, module in list(sys.modules.items()):
        if name.startswith(("adapters.", "gateway.tools.")) and hasattr(
            module, "close_shared_clients"
        ):
            await module.close_shared_clients()
