"""Web explorer (Streamlit); talks to the search API over HTTP only.

Not built yet: see the web-explorer issue.
"""
