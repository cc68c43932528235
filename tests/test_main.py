"""The app's start-up, beyond the components it opens (tests in the packages' own folders)."""

from __future__ import annotations

import gc

from tests.support.app import MakeSettings, serve


async def test_the_young_gc_threshold_comes_from_the_settings(make_settings: MakeSettings) -> None:
    """Set once the app is up (the process's collector, so the test puts it back)."""
    before = gc.get_threshold()
    try:
        async with serve(make_settings(gc_gen0_threshold=12_345)) as client:
            assert (await client.get("/livez")).status_code == 200
            assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.set_threshold(*before)
