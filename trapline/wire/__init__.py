"""What two plugins share about one subject: formats and files both sides read and write."""
