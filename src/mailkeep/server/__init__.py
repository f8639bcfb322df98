"""`mailkeep serve`: the service host (store, agents) and the mail protocols. Calls the
store and directory; the engine only through them."""
