"""Opening one page of the app under AppTest, with query parameters as a shared URL has them."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from engine.config import PROJECT_ROOT

PAGES = PROJECT_ROOT / "dashboards" / "pages"


def open_page(name: str, **query: str) -> AppTest:
    """`dashboards/pages/<name>.py` run once, its URL holding `query`."""
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


class DownloadFiles:
    """What the download buttons of the AppTests run meanwhile offer, by button label: AppTest
    keeps the files in a media storage of each run, which this collects."""

    def __init__(self, monkeypatch) -> None:
        from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
        from streamlit.testing.v1 import app_test

        self.storages: list[MemoryMediaFileStorage] = []
        storages = self.storages

        class Recorded(MemoryMediaFileStorage):
            def __init__(self, media_endpoint: str) -> None:
                super().__init__(media_endpoint)
                storages.append(self)

        monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recorded)

    def text(self, at: AppTest, label: str) -> str:
        """The file behind `at`'s download button `label`, as text."""
        [button] = [b for b in at.get("download_button") if b.label == label]
        filename = button.proto.url.rsplit("/", 1)[1]
        return self.storages[-1].get_file(filename).content.decode()
