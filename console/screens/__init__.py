"""The console's screens, one module each; `app.VIEWS` lists them in tab order."""
