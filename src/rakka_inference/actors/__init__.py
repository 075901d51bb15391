"""The actor kernel: actors on asyncio, bounded mailboxes, ask/tell, supervision, watch."""
