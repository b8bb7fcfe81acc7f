"""`beamctl dashboard`: a local web page over the hosts the app commands reach (data.py asks them,
server.py serves page.html and its /api on 127.0.0.1 with a token)."""
