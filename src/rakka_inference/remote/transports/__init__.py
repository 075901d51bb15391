"""The HTTP transports: what they share (:mod:`.base`), one module per library
(:mod:`.aiohttp`, :mod:`.httpx`), and the choice between them (:mod:`.factory`)."""
