"""The demo of a trained network: the page (serving.py, which app.py serves beside a run), the
export of a Hugging Face Space (space.py) and the Space's own app.py (space_app.py)."""
