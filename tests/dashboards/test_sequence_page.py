"""The Sequence page, run for real (AppTest) on generated marts and on an empty database."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import sqlalchemy as sa

from tests.dashboards.pages import open_page


def _campaigns(db) -> list[tuple[str, str, str]]:
    """(tenant name, campaign id, campaign name) of the generated campaigns."""
    with db.analytics.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.text(
                    "select tenant_name, campaign_id::text, campaign_name "
                    "from analytics_marts.dim_campaigns where tenant_name like 'gen-%' "
                    "order by tenant_name, campaign_name"
                )
            )
        ]


def _from_the_app(db, campaign_id: str) -> dict[str, tuple[int, int, int]]:
    """{step key: (reached, went on, exited)} straight from app.step_transitions."""
    with db.owner.connect() as conn:
        rows = conn.execute(
            sa.text(
                """
                select s.key,
                       (select count(*) from app.step_transitions t where t.to_step_id = s.id),
                       (select count(*) from app.step_transitions t where t.from_step_id = s.id
                        and t.outcome in ('moved', 'completed')),
                       (select count(*) from app.step_transitions t where t.from_step_id = s.id
                        and t.outcome = 'exited')
                from app.campaign_steps s where s.campaign_id = :c
                """
            ),
            {"c": campaign_id},
        )
        return {key: (reached, on, out) for key, reached, on, out in rows}


def test_the_funnel_is_the_engines_step_history(use_database, generated):
    use_database(generated)
    tenant, campaign, name = _campaigns(generated)[0]
    at = open_page("sequence", tenant=tenant, sequence=name)
    assert not at.exception, at.exception
    assert at.selectbox(key="sequence").value == campaign
    table = at.dataframe[0].value
    shown = {
        key: (reached, on, out)
        for key, reached, on, out in zip(
            table["step_key"], table["reached"], table["moved_on"], table["exited"], strict=True
        )
    }
    assert shown == _from_the_app(generated, campaign)
    # the step's rates are the marts' (over delivered messages), not a share the page makes
    with generated.analytics.connect() as conn:
        rates = dict(
            conn.execute(
                sa.text(
                    "select steps.step_key, count(*) filter (where sends.is_opened)::float8 "
                    "  / nullif(count(*) filter (where sends.is_delivered), 0) "
                    "from analytics_marts.dim_steps steps "
                    "left join analytics_marts.fct_sends sends using (step_id) "
                    "where steps.campaign_id = cast(:c as uuid) group by 1"
                ),
                {"c": campaign},
            ).all()
        )
    opened = dict(zip(table["step_key"], table["open_rate"], strict=True))
    assert opened.keys() == rates.keys()
    for key, rate in rates.items():
        assert pd.isna(opened[key]) if rate is None else opened[key] == pytest.approx(rate), key
    assert any(rate for rate in rates.values())
    assert list(table["step_key"]) == [
        "intro",
        "pause",
        "warm?",
        "warm",
        "cold",
        "later",
        "breakup",
    ]
    with generated.owner.connect() as conn:
        enrolled = conn.execute(
            sa.text("select count(*) from app.campaign_contacts where campaign_id = :c"),
            {"c": campaign},
        ).scalar_one()
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["Enrolled"] == f"{enrolled:,}"
    assert table["reached"].iloc[0] == enrolled  # everyone begins at the intro
    # the condition's two branches add up to those that went on from it
    warm, cold = shown["warm"][0], shown["cold"][0]
    assert warm + cold == shown["warm?"][1] and warm > 0 and cold > 0
    assert [h.value for h in at.subheader] == [
        "Step funnel",
        "Condition splits",
        "Exits by reason",
        "A/B variants",
    ]
    exits = at.dataframe[1].value
    assert exits["exited"].sum() == sum(out for _, _, out in shown.values())
    assert {"replied", "contact unsubscribed"} <= set(exits["exit_reason"])
    charts = at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")
    assert len(charts) == 4  # funnel, condition split, exits, variants
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download CSV"] * 3
    # the exits chart counts enrollments in whole numbers, its step labels uncut
    exits_chart = json.loads(charts[2].proto.spec)["encoding"]
    assert exits_chart["x"]["title"] == "Enrollments that left"
    assert exits_chart["x"]["axis"]["tickMinStep"] == 1
    assert exits_chart["x"]["axis"]["format"] == ",d"
    assert exits_chart["y"]["axis"]["labelLimit"] >= 300
    assert all(frame.proto.placeholder == "—" for frame in at.dataframe)


def test_the_ab_comparison_follows_the_period_and_the_campaign(use_database, generated):
    use_database(generated)
    tenant, campaign, name = _campaigns(generated)[0]
    # every message the generator sent (30 days up to now) lies in the last 90 days
    month = open_page("sequence", tenant=tenant, sequence=name, period="Last 90 days")
    variants = month.dataframe[2].value
    assert list(variants["variant"]) == ["1", "2"] and set(variants["step_key"]) == {"intro"}
    with generated.owner.connect() as conn:
        expected = dict(
            conn.execute(
                sa.text(
                    "select m.variant, count(*) from app.sent_emails m "
                    "where m.campaign_id = :c and m.variant is not null "
                    "and m.status in ('sent', 'bounced') and m.sent_at is not null "
                    "group by 1"
                ),
                {"c": campaign},
            ).all()
        )
    assert dict(zip(variants["variant"], variants["sent"], strict=True)) == expected
    week = open_page("sequence", tenant=tenant, sequence=name, period="Last 7 days")
    assert week.dataframe[2].value["sent"].sum() < variants["sent"].sum()
    # another campaign in the URL: another funnel
    _, other_id, other = _campaigns(generated)[1]
    second = open_page("sequence", tenant=tenant, sequence=other)
    assert second.selectbox(key="sequence").value == other_id
    assert not second.dataframe[0].value.equals(month.dataframe[0].value)
    assert dict(
        zip(*[second.dataframe[0].value[c] for c in ("step_key", "reached")], strict=True)
    ) == {key: reached for key, (reached, _, _) in _from_the_app(generated, other_id).items()}


def test_an_empty_database_says_what_to_do_first(empty_marts):
    at = open_page("sequence")
    assert not at.exception, at.exception
    assert "has no campaigns yet" in at.info[0].value


def test_marts_not_built_yet_say_how_to_build_them(use_database, database):
    use_database(database)
    at = open_page("sequence")
    assert not at.exception, at.exception
    assert "have not been built yet" in at.info[0].value
