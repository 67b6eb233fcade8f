"""Email service providers' event exports: SES, SendGrid, Mailgun and Postmark webhook events,
as JSON lines, a JSON array or CSV, imported in batches like contact uploads.

`penguin events import FILE --format ...` and the events inbox (`PENGUIN_HOME/events/inbox/
<tenant>/<provider>/<file>`, picked up by a Dagster sensor) both end in `import_events`:
`formats` reads each provider's records, `records` a file's records, `imports` the batch.
"""

from engine.provider_events.formats import FORMATS, KINDS
from engine.provider_events.imports import EventImportError, ImportResult, import_events

__all__ = ["FORMATS", "KINDS", "EventImportError", "ImportResult", "import_events"]
