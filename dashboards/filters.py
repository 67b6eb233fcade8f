"""The sidebar's filters, shared by the analytics pages and kept in the URL's query parameters
(Streamlit's `bind="query-params"`): a view can be shared, bookmarked and reloaded.

`?tenant=Acme&period=90d&campaign=Q4+outreach` opens the page on that view (a bound widget's
option is named as it is shown: a campaign by its name, a period as "Last 90 days" or by its
short form in PERIOD_SHORT_FORMS); a parameter that names nothing (a campaign of another
tenant, a period that does not exist) is dropped, and the default is used. docs/dashboards.md
lists every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import streamlit as st

from dashboards import data

PERIODS = ("Last 7 days", "Last 30 days", "Last 90 days", "This month", "Custom")
DEFAULT_PERIOD = "Last 30 days"
#: The short forms `?period=` takes beside the periods' names (case does not matter).
PERIOD_SHORT_FORMS = {
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "month": "This month",
    "custom": "Custom",
}


@dataclass(frozen=True)
class Filters:
    tenant_id: str
    tenant_name: str
    start: date
    end: date
    campaign_ids: tuple[str, ...] = ()  # empty: every campaign
    sender_ids: tuple[str, ...] = ()  # empty: every sender

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def previous(self) -> tuple[date, date]:
        """The period of equal length just before this one."""
        return self.start - timedelta(days=self.days), self.start - timedelta(days=1)

    def params(self) -> dict[str, object]:
        """The bound parameters of the marts' queries (data.py)."""
        return {
            "tenant_id": self.tenant_id,
            "start": self.start,
            "end": self.end,
            "campaign_ids": list(self.campaign_ids),
            "sender_ids": list(self.sender_ids),
        }


def period_dates(period: str, today: date, custom: object = None) -> tuple[date, date]:
    """The first and last day of `period` (one of PERIODS) ending `today`; `custom` is the date
    input's value for "Custom" (a day or a pair of days)."""
    if period == "This month":
        return today.replace(day=1), today
    if period == "Custom":
        if isinstance(custom, tuple | list) and len(custom) == 2:
            return custom[0], custom[1]
        if isinstance(custom, tuple | list) and len(custom) == 1:  # the second not picked yet
            return custom[0], custom[0]
        if isinstance(custom, date):
            return custom, custom
        return today - timedelta(days=29), today
    days = int(period.split()[1])
    return today - timedelta(days=days - 1), today


def sidebar(*, campaigns: bool = True, senders: bool = True, none_yet: str) -> Filters:
    """The filters in the sidebar; the page stops with `none_yet` (what to do next) when the
    marts are missing or hold no tenant."""
    try:
        tenants = data.tenant_choices()
        active = data.last_active_tenant() if len(tenants) > 1 else None
    except data.MartsMissingError as exc:
        st.info(str(exc))
        st.stop()
    if not tenants:
        st.info(none_yet)
        st.stop()
    names = list(tenants)
    name = names[0]
    if len(names) > 1:
        name = st.sidebar.selectbox(
            "Tenant",
            names,
            index=names.index(active) if active in names else 0,
            key="tenant",
            bind="query-params",
        )
    tenant_id = tenants[name]

    today = datetime.now(UTC).date()
    _name_a_short_period()
    period = st.sidebar.selectbox(
        "Period", PERIODS, index=PERIODS.index(DEFAULT_PERIOD), key="period", bind="query-params"
    )
    custom = None
    if period == "Custom":
        custom = st.sidebar.date_input(
            "Days",
            value=(today - timedelta(days=29), today),
            max_value=today,
            key="days",
            bind="query-params",
        )
    start, end = period_dates(period, today, custom)

    campaign_ids = (
        _pick("Campaigns", data.campaign_choices(tenant_id), "campaign") if campaigns else ()
    )
    sender_ids = _pick("Senders", data.sender_choices(tenant_id), "sender") if senders else ()
    return Filters(tenant_id, name, start, end, campaign_ids, sender_ids)


def _name_a_short_period() -> None:
    """`?period=` given by a short form (`7d`, PERIOD_SHORT_FORMS) written in the URL as the
    period's name, and the page run again: the period widget's URL binding knows the periods by
    their names only, and reads the URL as the run began. (Taking the short form as the
    widget's default instead opened the page on it, but a bound widget leaves its default out
    of the URL: the address bar lost the period at once, and a bookmark or a reload of it
    opened on the last 30 days. Streamlit refuses to write a bound parameter once its widget
    is made.)"""
    asked = str(st.query_params.get("period", ""))
    name = PERIOD_SHORT_FORMS.get(asked.strip().lower())
    if name is not None and asked != name:  # "Custom" is its own short form, in another case
        st.query_params["period"] = name
        st.rerun()


def _pick(label: str, options: dict[str, str], key: str) -> tuple[str, ...]:
    """A sidebar multiselect of `options` ({id: name}) bound to `?key=<name>`; the ids picked
    (none: all)."""
    picked = st.sidebar.multiselect(
        label,
        list(options),
        format_func=options.get,
        placeholder=f"All {label.lower()}",
        key=key,
        bind="query-params",
    )
    return tuple(picked)
