"""The local Salesforce-compatible server: a stand-in for a real org in the demo and the tests."""
