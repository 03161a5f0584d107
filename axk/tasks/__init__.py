"""Models as tasks of the training loop (`axk.train.loop.Task`): span, AudioBERT, ITH."""
