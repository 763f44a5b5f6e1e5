"""The app's page scripts: one file per `st.navigation` entry, each a thin function over `app.views`."""
