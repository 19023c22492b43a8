"""Training data of a trial: raw splits read, cleaned and carved (classification), chats (instruction), token caches.
The only folder importing `datasets`."""
