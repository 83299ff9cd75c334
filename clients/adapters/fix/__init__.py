"""FIX 4.4 adapter on QuickFIX (optional extra ``pretrade[fix]``): an acceptor for client
sessions, an initiator to the venue, every order checked through StreamOrders.
``pretrade fix run --config adapter.toml``; docs/adapters.md. Importing
``clients.adapters.fix.adapter`` needs the ``quickfix`` package."""
