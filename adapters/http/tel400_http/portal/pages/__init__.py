"""The portal's pages, one module per feature, each exposing ``routes`` (see ``portal.PAGES``)."""
