"""bakeoff.curate"""
