from common.lru import LRU


def test_evicts_least_recently_used() -> None:
    lru: LRU[int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now most recent
    lru.put("c", 3)
    assert lru.get("b") is None
    assert lru.get("a") == 1
    assert lru.get("c") == 3
    assert len(lru) == 2


def test_zero_capacity_stores_nothing() -> None:
    lru: LRU[int] = LRU(0)
    lru.put("a", 1)
    assert lru.get("a") is None
    assert len(lru) == 0
