"""The service layer: configs, keys, certificates and the live system. No Flask here."""
