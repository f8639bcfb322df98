"""The information store: servers, storage groups, mailbox and public folder databases,
mailboxes, folders, messages, content, agents and isinteg. Calls the directory and the
engine; knows nothing about protocols."""
