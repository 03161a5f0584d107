"""Publishing a run: model cards for its exports (`card`) and their upload to the Hub
(`push`)."""
