"""Atelier's Streamlit app: `atelier ui` (or `streamlit run streamlit_app.py`) runs this file.

A thin entry: the chat and history pages, the sidebar and their helpers live in
`assistant/ui/`, so they are packaged, type-checked and testable like the rest of Atelier.
Everything happens under the `__main__` guard (Streamlit runs the script as `__main__`), so
`atelier ui` can import this module to find its path without loading Streamlit's runtime.
"""

if __name__ == "__main__":
    from assistant.ui.app import main

    main()
