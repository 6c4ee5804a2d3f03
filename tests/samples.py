"""Read /metrics as Prometheus does: samples by name and labels, parsed by prometheus_client."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def parse_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def metric(client: Any, name: str, **labels: str) -> float:
    """The value /metrics reports for one sample; 0 when it is not reported (never counted)."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse_samples(await resp.text()).get((name, frozenset(labels.items())), 0.0)
