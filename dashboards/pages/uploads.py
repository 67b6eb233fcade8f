"""Uploads: put a contacts file into a list, follow its batch, download its rejects.

The page writes nothing to the database: a file it accepts goes into the uploads inbox (with
the mapping chosen here beside it), where Dagster's `upload_inbox_sensor` picks it up. The
batches and rejects shown come from the `fct_upload_batches` and `fct_upload_rejects` marts,
views that show each batch as it is now: those of the sidebar's tenant made in its period.
"""

import tempfile
from pathlib import Path

import polars as pl
import streamlit as st

from dashboards import data, filters, ui
from engine import inbox
from engine.config import Settings
from engine.ingest import FIELDS, IngestError, preview_file
from engine.ingest.columns import ATTRIBUTE, check_fields
from engine.text import shown

KEEP = "(keep as attribute)"
NEW_LIST = "➕ New list"
ENCODINGS = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 with BOM",
    "utf-16": "UTF-16",
    "utf-16-le": "UTF-16 LE",
    "utf-16-be": "UTF-16 BE",
    "windows-1252": "Windows-1252",
    "latin-1": "Latin-1",
}
STATUS = {
    "queued": "⏳ queued",
    "pending": "⏳ pending",
    "processing": "⚙️ processing",
    "completed": "✅ completed",
    "failed": "❌ failed",
}

st.title("Upload contacts")
st.caption(
    "CSV, TSV or TXT exports from Excel, Google Sheets, CRMs and outreach tools: the encoding, "
    "delimiter and header are detected, and known column names are mapped for you."
)

view = filters.sidebar(
    campaigns=False,
    senders=False,
    none_yet="There is no tenant yet: create one with `penguin tenant create NAME`.",
)
tenant = view.tenant_name
uploads = Settings.from_env().uploads


def plain(text: object) -> str:
    """User text (a file name, an error quoting a header) as literal text in Markdown:
    control characters escaped by `shown`, Markdown's punctuation by a backslash."""
    return "".join(f"\\{c}" if c in "\\`*_[]<>#|~$" else c for c in shown(text, 500))


def staged(uploaded) -> Path:
    """The uploaded file on disk (once per upload), for the preview and the inbox."""
    files = st.session_state.setdefault("staged_uploads", {})
    if uploaded.file_id not in files:
        for old in files.values():
            Path(old).unlink(missing_ok=True)
        files.clear()
        suffix = Path(uploaded.name).suffix
        with tempfile.NamedTemporaryFile(
            prefix="penguin-upload-", suffix=suffix, delete=False
        ) as f:
            f.write(uploaded.getbuffer())
        files[uploaded.file_id] = f.name
    return Path(files[uploaded.file_id])


@st.cache_data(max_entries=4, show_spinner="Reading the file…")
def preview(path: str, name: str):
    """`preview_file`, once per staged file rather than on every rerun of the page."""
    return preview_file(Path(path), file_name=name)


def mapping_editor(columns: list[str], detected: dict[str, str], key: str) -> dict[str, str]:
    """One picker per column, preset to the detected field; returns {column: field|KEEP}."""
    options = [KEEP, *FIELDS]
    chosen = {}
    grid = st.columns(3)
    for i, column in enumerate(columns):
        preset = detected.get(column, KEEP)
        chosen[column] = grid[i % 3].selectbox(
            column, options, index=options.index(preset), key=f"{key}:{column}"
        )
    return chosen


def upload_form() -> None:
    known_lists = data.upload_lists(tenant)
    choice = NEW_LIST
    if known_lists:
        choice = st.selectbox(
            "List",
            [*known_lists, NEW_LIST],
            help="The contacts are added to this list; membership never duplicates.",
        )
    list_name = choice
    if choice == NEW_LIST:
        list_name = st.text_input("New list name", placeholder="e.g. Trade fair 2026").strip()
    uploaded = st.file_uploader("Contacts file", type=["csv", "tsv", "txt"])
    if uploaded is None:
        return
    path = staged(uploaded)
    try:
        found = preview(str(path), uploaded.name)
    except IngestError as exc:  # preview_file reports every failure to read a file so
        st.error(f"This file cannot be uploaded: {plain(exc)}")
        return
    fmt = found.file_format
    delimiter = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(
        fmt["delimiter"], repr(fmt["delimiter"])
    )
    st.caption(
        f"Read as {ENCODINGS.get(fmt['encoding'], fmt['encoding'])}, {delimiter}-delimited, "
        + ("with a header row" if fmt["has_header"] else "without a header row")
        + (f", {fmt['skipped_lines']} title line(s) skipped" if fmt["skipped_lines"] else "")
        + f". First {found.rows.height} rows:"
    )
    st.dataframe(found.rows, hide_index=True, placeholder=ui.MISSING, width="stretch")

    st.subheader("Column mapping")
    st.caption(
        "Each column becomes a contact field or is kept as an attribute, usable in templates."
    )
    chosen = mapping_editor(list(fmt["columns"]), found.mapping, key=uploaded.file_id)
    # Only what differs from the detected mapping is sent along, and stored on the batch.
    overrides = {
        column: ATTRIBUTE if field == KEEP else field
        for column, field in chosen.items()
        if field != found.mapping.get(column, KEEP)
    }
    problem = None
    try:
        check_fields({c: f for c, f in chosen.items() if f != KEEP})
    except IngestError as exc:
        problem = str(exc)
    if problem is None and "email" not in chosen.values():
        problem = found.problem or "choose the column that holds the email address"
    if problem:
        st.warning(f"Before uploading: {problem}")
    if not list_name:
        st.caption("Choose or name a list to upload into.")
    if st.button("Upload", type="primary", disabled=bool(problem) or not list_name):
        try:
            queued = inbox.drop(
                uploads,
                path,
                tenant,
                list_name,
                mapping=overrides,
                via="dashboard",
                name=uploaded.name,
            )
        except IngestError as exc:
            st.error(plain(exc))
            return
        except OSError as exc:  # the inbox folder: full disk, permissions
            st.error(f"The file could not be queued: {plain(exc)}")
            return
        st.success(
            f"{plain(uploaded.name)} is queued for list '{plain(list_name)}' "
            f"({plain(queued.name)}). Dagster's upload sensor picks it up within seconds; "
            "follow it below."
        )


def uploads_now() -> tuple[list[inbox.InboxFile], pl.DataFrame, bool]:
    """Files waiting in the inbox, the latest batches, and whether any of them is in flight."""
    waiting = [f for f in inbox.pending_files(uploads) if f.tenant == tenant]
    frame = data.upload_batches(tenant, view.start, view.end)
    busy = bool(waiting) or frame["upload_status"].is_in(["pending", "processing"]).any()
    return waiting, frame, busy


@st.fragment(run_every=2.0)
def live_batches() -> None:
    """`show_batches`, refreshed every 2 seconds until nothing is in flight."""
    waiting, frame, busy = uploads_now()
    if not busy:
        st.rerun()  # the whole page once more, without the timer
    st.caption("Refreshing every 2 seconds while uploads are in flight.")
    show_batches(waiting, frame)


def show_batches(waiting: list[inbox.InboxFile], frame: pl.DataFrame) -> None:
    for item in waiting:
        note = f" — will fail: {plain(item.problem)}" if item.problem else ""
        st.write(
            f"{STATUS['queued']} · {plain(item.path.name)} → list '{plain(item.list_name)}'{note}"
        )
    if frame.is_empty():
        if not waiting:
            st.info(
                f"Tenant {tenant} has no uploads between {view.start} and {view.end}: pick a "
                "longer period in the sidebar, or upload a file above."
            )
        return
    st.caption(data.live_caption())
    shown = frame.with_columns(frame["upload_status"].replace_strict(STATUS, default="?"))
    st.dataframe(
        shown.drop("upload_batch_id", "column_mapping", "file_encoding", "file_delimiter"),
        hide_index=True,
        placeholder=ui.MISSING,
        width="stretch",
        column_config={
            "file_name": "File",
            "list_name": "List",
            "upload_source": "Via",
            "upload_status": "Status",
            "upload_error": st.column_config.TextColumn("Error", width="large"),
            "total_rows": st.column_config.NumberColumn("Rows"),
            "inserted_count": st.column_config.NumberColumn("New"),
            "updated_count": st.column_config.NumberColumn("Updated"),
            "unchanged_count": st.column_config.NumberColumn("Unchanged"),
            "duplicate_count": st.column_config.NumberColumn(
                "Duplicates", help="Repeats of an address earlier in the same file, merged"
            ),
            "rejected_count": st.column_config.NumberColumn("Rejected"),
            "suppressed_count": st.column_config.NumberColumn(
                "Suppressed", help="Addresses on the suppression list; they stay suppressed"
            ),
            "role_address_count": st.column_config.NumberColumn(
                "Role addresses", help="info@, noreply@, ...: flagged, not rejected"
            ),
            "list_added_count": st.column_config.NumberColumn("Added to list"),
            "created_at": st.column_config.DatetimeColumn("Uploaded", format="YYYY-MM-DD HH:mm"),
            "duration_seconds": st.column_config.NumberColumn("Seconds", format="%.1f"),
        },
    )

    with_rejects = frame.filter(frame["rejected_count"] > 0)
    if with_rejects.is_empty():
        return
    st.subheader("Rejected rows")
    labels = {
        row["upload_batch_id"]: f"{row['file_name']} → {row['list_name']} "
        f"({row['rejected_count']:,} rejected, {row['created_at']:%Y-%m-%d %H:%M})"
        for row in with_rejects.iter_rows(named=True)
    }
    batch_id = st.selectbox("Batch", list(labels), format_func=labels.get)
    batch = with_rejects.filter(with_rejects["upload_batch_id"] == batch_id).row(0, named=True)
    st.caption("The first 100 of them; the download has them all.")
    st.dataframe(
        data.upload_rejects(tenant, str(batch_id), limit=100),
        hide_index=True,
        placeholder=ui.MISSING,
        width="stretch",
        column_config={
            "line_number": st.column_config.NumberColumn("Line", format="%d"),
            "reason": "Reason",
            "raw_row": "Line as uploaded",
        },
    )
    ui.download(
        lambda: data.upload_rejects(tenant, str(batch_id)),  # read when clicked
        f"{Path(batch['file_name']).stem}-rejects",
        label=f"Download all {batch['rejected_count']:,} rejected rows (CSV)",
        tip="Cells that a spreadsheet would run as a formula are prefixed with '",
    )


upload_form()
st.divider()
st.header("Uploads")
waiting, frame, busy = uploads_now()
if busy:
    live_batches()
else:
    show_batches(waiting, frame)
