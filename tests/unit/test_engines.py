"""Engine facts: pool capacities as resolve() takes them, and URLs that hide passwords."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, QueuePool, StaticPool

from gunitune.core.resolve import PoolFacts
from gunitune.engines import describe, pool_capacity, pool_facts

SECRET = "s3cretpw"


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[dict[str, Engine]]:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    made = {
        "queue": create_engine(url, poolclass=QueuePool, pool_size=2, max_overflow=1),
        "unlimited": create_engine(url, poolclass=QueuePool, pool_size=4, max_overflow=-1),
        "static": create_engine(url, poolclass=StaticPool),
        "null": create_engine(url, poolclass=NullPool),
    }
    yield made
    for engine in made.values():
        engine.dispose()


@pytest.mark.parametrize(
    ("name", "capacity"), [("queue", 3), ("unlimited", None), ("static", 1), ("null", None)]
)
def test_pool_capacity_is_what_the_pool_hands_out_at_once(
    engines: dict[str, Engine], name: str, capacity: int | None
) -> None:
    assert pool_capacity(engines[name]) == capacity


def test_pool_facts_mark_only_the_primary_engine(engines: dict[str, Engine]) -> None:
    queue, null = engines["queue"], engines["null"]
    assert pool_facts([queue, null], primary=null) == [
        PoolFacts(3, primary=False),
        PoolFacts(None, primary=True),
    ]
    assert pool_facts([queue]) == [PoolFacts(3, primary=False)]


def test_engine_description_hides_a_query_password() -> None:
    engine = create_engine(f"postgresql+psycopg2://app@db.example/app?password={SECRET}")
    try:
        described = describe(engine)
        assert SECRET not in str(described)
        assert described["pool"] == "QueuePool"
        assert described["capacity"] == 15
    finally:
        engine.dispose()
