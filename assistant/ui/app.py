"""The entry point's body: page setup, navigation, the shared sidebar, then the chosen page.

`streamlit_app.py` only calls `main()`; keeping the code here lets mypy and ruff check it
as part of the package and keeps the installed entry script a two-liner.
"""

from __future__ import annotations

import streamlit as st

from assistant.ui import CHAT_PAGE, HISTORY_PAGE, common, history
from assistant.ui.support import Keys


def main() -> None:
    st.set_page_config(page_title="Atelier", page_icon="🎨", layout="centered")
    chat = st.Page(CHAT_PAGE, title="Chat", icon=":material/chat:", url_path="chat", default=True)
    gallery = st.Page(HISTORY_PAGE, title="History", icon=":material/photo_library:", url_path="history")
    page = st.navigation([chat, gallery])
    history.keep_filters()
    common.setup()
    if st.session_state.pop(Keys.GOTO_CHAT, False) and page.title != chat.title:
        st.switch_page(chat)
    page.run()
