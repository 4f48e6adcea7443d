"""The offline sound kit: a compact source bank of real recordings and synthesis (Debian packages and
wheels), expanded in Python into a pretraining corpus, a mini HEAR suite and SUPERB layouts."""
