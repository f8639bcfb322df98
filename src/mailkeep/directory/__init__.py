"""The directory: users, groups and the configuration tree, over an embedded or LDAP backend."""
