import io

import pytest
from rich.console import Console

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import BlueprintAnalytics, TelemetryHub

E = TelemetryEventType


def _feed(analytics: BlueprintAnalytics) -> None:
    events = [
        TelemetryEvent(
            E.SEED_GERMINATED, seed_id="s1", blueprint_id="conv_light", data={"params": 100}
        ),
        TelemetryEvent(
            E.SEED_GERMINATED, seed_id="s2", blueprint_id="conv_light", data={"params": 100}
        ),
        TelemetryEvent(E.SEED_GERMINATED, seed_id="s3", blueprint_id="attention"),
        TelemetryEvent(
            E.SEED_GERMINATED, seed_id="s4", blueprint_id="conv_light", data={"params": 100}
        ),
        TelemetryEvent(
            E.SEED_FOSSILIZED,
            seed_id="s1",
            blueprint_id="conv_light",
            data={"counterfactual_contribution": 0.02},
        ),
        # No blueprint_id: attributed through s2's germination.
        TelemetryEvent(E.SEED_FOSSILIZED, seed_id="s2", data={"counterfactual_contribution": 0.04}),
        TelemetryEvent(E.SEED_FOSSILIZED, seed_id="s4", blueprint_id="conv_light"),
        TelemetryEvent(E.SEED_CULLED, seed_id="s3", blueprint_id="attention"),
        TelemetryEvent(E.SEED_CULLED, seed_id="unknown"),  # unattributable: ignored
        TelemetryEvent(E.EPOCH_COMPLETED, epoch=1),  # not a lifecycle outcome: ignored
    ]
    for event in events:
        analytics.handle(event)


def test_counts_contribution_and_params_per_blueprint():
    analytics = BlueprintAnalytics()
    _feed(analytics)
    summary = analytics.summary()
    assert list(summary) == ["attention", "conv_light"]
    conv = summary["conv_light"]
    assert (conv["germinated"], conv["fossilized"], conv["culled"]) == (3, 3, 0)
    assert conv["mean_contribution"] == pytest.approx(0.03)  # s4 reported none
    assert conv["params_added"] == 300
    assert summary["attention"] == {
        "germinated": 1,
        "fossilized": 0,
        "culled": 1,
        "mean_contribution": None,
        "params_added": 0,
    }


def test_table_renders_every_blueprint():
    analytics = BlueprintAnalytics()
    _feed(analytics)
    buffer = io.StringIO()
    Console(file=buffer, force_terminal=False, width=120).print(analytics.table())
    text = buffer.getvalue()
    assert "conv_light" in text and "attention" in text
    assert "+0.0300" in text
    assert "300" in text


def test_works_as_hub_output():
    analytics = BlueprintAnalytics()
    with TelemetryHub() as hub:
        hub.add_output(analytics)
        hub(TelemetryEvent(E.SEED_GERMINATED, seed_id="s1", blueprint_id="bp"))
    assert analytics.summary()["bp"]["germinated"] == 1
