"""Sans-I/O wire values below every provider and transport: the SSE decoder, HTTP request
and response values, upstream error classification and duration parsing. No sockets here."""
