"""s3prl upstream `mamclap` over the hear_mamclap encoder."""
