import asyncio
import signal
import sqlite3
import subprocess
import sys

from rlaif.engine.cache import Cache, request_key


def test_put_get_persist_and_wal(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = Cache(path)
    cache.put_many("generate", [("k1", {"text": "hi"}), ("k2", {"text": "ho"})])
    assert cache.get("k1") == {"text": "hi"} and cache.get("missing") is None
    assert cache.get_many(["k1", "k2", "k3"]) == {"k1": {"text": "hi"}, "k2": {"text": "ho"}}
    cache.close()
    again = Cache(path)  # survives the process / connection
    assert len(again) == 2 and again.get("k2") == {"text": "ho"}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_request_key_is_canonical_and_sensitive():
    base = {"messages": [{"role": "user", "content": "x"}], "params": {"a": 1, "b": 2}}
    same = {"params": {"b": 2, "a": 1}, "messages": [{"role": "user", "content": "x"}]}
    assert request_key("generate", "t", "m", base) == request_key("generate", "t", "m", same)
    assert request_key("generate", "t", "m", base) != request_key("generate", "t", "m2", base)
    changed = {**base, "messages": [{"role": "user", "content": "y"}]}
    assert request_key("generate", "t", "m", base) != request_key("generate", "t", "m", changed)


def test_many_keys_are_fetched_in_chunks(tmp_path):
    cache = Cache(None)
    cache.put_many("generate", [(f"k{i}", {"i": i}) for i in range(1200)])
    got = cache.get_many([f"k{i}" for i in range(1300)])
    assert len(got) == 1200 and got["k1199"] == {"i": 1199}


def _committed(path):
    """What another process reading the cache file sees."""
    db = sqlite3.connect(path)
    try:
        return {k for (k,) in db.execute("SELECT key FROM entries")}
    finally:
        db.close()


def test_puts_are_group_committed_and_visible_to_get_at_once(tmp_path):
    path = tmp_path / "c.sqlite"

    async def go():
        cache = Cache(path, commit_seconds=0.5, commit_items=3)
        cache.put_many("generate", [("k1", {"text": "one"})])
        cache.put_many("generate", [("k2", {"text": "two"})])
        assert _committed(path) == set()  # pending, not yet written
        assert cache.get("k1") == {"text": "one"}  # but this process sees it at once
        assert cache.get_many(["k1", "k2", "k9"]) == {"k1": {"text": "one"}, "k2": {"text": "two"}}
        cache.put_many("generate", [("k3", {"text": "three"})])
        assert _committed(path) == {"k1", "k2", "k3"}  # commit_items reached
        cache.put_many("generate", [("k4", {"text": "four"})])
        await asyncio.sleep(0.8)  # nothing else arrives: the timer commits the window
        assert _committed(path) == {"k1", "k2", "k3", "k4"}
        cache.put_many("generate", [("k5", {"text": "five"})])
        assert "k5" not in _committed(path)
        cache.close()
        assert "k5" in _committed(path)  # close commits the open window

    asyncio.run(go())


KILLED_CACHE = """
import asyncio, os, signal, sys
from rlaif.engine.cache import Cache

async def go():
    cache = Cache(sys.argv[1], commit_seconds=60)
    cache.put_many("generate", [("k1", {"text": "one"}), ("k2", {"text": "two"})])
    cache.commit()
    cache.put_many("generate", [("k3", {"text": "three"})])
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(go())
"""


def test_a_kill_keeps_exactly_the_committed_entries(tmp_path):
    path = tmp_path / "c.sqlite"
    proc = subprocess.run([sys.executable, "-c", KILLED_CACHE, str(path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    again = Cache(path)
    assert len(again) == 2 and again.get("k2") == {"text": "two"} and again.get("k3") is None


def test_the_scheduler_commits_the_cache_when_it_closes(tmp_path, fake_labeler):
    from rlaif.engine.scheduler import Scheduler
    from rlaif.labelers.base import GenerateParams

    path = tmp_path / "c.sqlite"
    cache = Cache(path, commit_seconds=60)
    sched = Scheduler(fake_labeler(), cache)
    conv = [{"role": "user", "content": "hello"}]

    async def go():
        await sched.generate(conv, GenerateParams())
        assert _committed(path) == set()
        await sched.aclose()

    asyncio.run(go())
    assert _committed(path) == set(sched.keys_for(conv, GenerateParams()))
