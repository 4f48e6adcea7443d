"""mamclap training side: offline sound kit, CLAP teacher, pretraining, evaluation harnesses and the CLI."""
