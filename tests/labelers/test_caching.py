"""Where the static prefix ends, and when it is worth marking for a provider's cache."""

from rlaif.labelers.caching import PrefixTracker, prefix_key, static_prefix

S = {"role": "system", "content": "s"}
U = {"role": "user", "content": "u"}
A = {"role": "assistant", "content": "a"}


def test_the_static_prefix_is_everything_before_the_final_persons_turn():
    assert static_prefix([U]) == 0
    assert static_prefix([S, U]) == 1
    assert static_prefix([U, A, U, A, U]) == 4  # few-shot turns, then the real question
    assert static_prefix([U, A, U, A]) == 2  # a trailing prefill is not the person's turn
    assert static_prefix([U, A]) == 0


def test_a_prefix_is_marked_from_its_second_sighting_when_long_enough():
    long = [{"role": "user", "content": "x" * 4000}, A]
    tracker = PrefixTracker(min_tokens=1000)
    assert tracker.cacheable("m", long[:1]) is None  # no static prefix at all
    assert tracker.cacheable("m", [U, A, U]) is None  # too short
    end, key = tracker.cacheable("m", [*long, U])
    assert end == 2 and key == prefix_key("m", [*long, {"role": "user", "content": "other"}], 2)
    assert key != prefix_key("other-model", [*long, U], 2)
    assert [tracker.mark(key) for _ in range(3)] == [False, True, True]
    assert PrefixTracker(1000).mark(key, repeats=2)  # repeated in one batch: marked at once


def test_the_tracker_forgets_the_oldest_prefixes_beyond_its_capacity():
    tracker = PrefixTracker(1, capacity=2)
    for key in ("a", "b", "c"):
        tracker.mark(key)
    assert not tracker.mark("a") and tracker.mark("c")
