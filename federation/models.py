"""Tables of upstream connections and the identities they vouch for."""
