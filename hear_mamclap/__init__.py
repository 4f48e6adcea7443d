"""mamclap encoders as a HEAR 2021 module (the API lands with the HEAR issue)."""
