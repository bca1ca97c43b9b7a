"""forward3d.pipelines"""
