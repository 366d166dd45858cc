"""The chat page script `st.navigation` runs (the code is in `assistant.ui.chat`)."""

from assistant.ui.chat import render

if __name__ == "__main__":
    render()
