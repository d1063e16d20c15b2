from maie.cli import app

app()
