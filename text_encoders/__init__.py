"""Caption encoders found by name (config.text.encoder): MiniLM states or hashed word ids."""
