"""Storage backends behind one interface (see ``_base.Storage``)."""
