"""The history page script `st.navigation` runs (the code is in `assistant.ui.history`)."""

from assistant.ui.history import render

if __name__ == "__main__":
    render()
