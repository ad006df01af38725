"""The Jinja Dockerfile templates, a package only so that they ship with mlimg."""
