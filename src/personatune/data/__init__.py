"""Built-in data written for this project (prompt banks, neutral utterances)."""
