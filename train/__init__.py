"""bakeoff.train"""
