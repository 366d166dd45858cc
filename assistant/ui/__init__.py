"""The Streamlit UI: layout and rendering only.

The pages call `assistant` (one `Assistant.respond` per turn) and read `storage`; they never
plan, never import `tools`, and never decide anything a turn's events or the database do not
already say. Logic that is not rendering (session keys, view models, DOT source) lives in
`support`, so it is tested without Streamlit.

Pages are files inside this package (not a `pages/` folder beside `streamlit_app.py`), so
they ship with the installed package and `atelier ui` works from a wheel, and so that
`AppTest.switch_page` can reach each page as a file.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

#: The page scripts `st.navigation` runs; absolute so they resolve wherever the app is installed.
CHAT_PAGE = _HERE / "page_chat.py"
HISTORY_PAGE = _HERE / "page_history.py"
