"""The demo's traffic: real clinical requests with the example API keys, the reference and shifted
populations that drive drift, and the labelled A/B traffic with ground-truth feedback.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time

import httpx

from medserve_sandbox.sandbox_processes import SandboxProcesses

DEMO_KEYS = {"clinician": "msk_demo_clinician_7f3a9c2e4b1d", "admin": "msk_demo_admin_2c8e5a1f9d4b"}
"""The plaintext of the demo keys whose hashes are in examples/01-model-deployment/api-keys-secret.yaml."""
DEMO_PATIENTS = [
    ("MRN-0042117", {"age": 67, "sex": "male", "symptoms": ["fever", "cough", "shortness_of_breath"],
                     "vital_signs": {"heart_rate": 112, "systolic_bp": 98, "diastolic_bp": 61, "temperature": 39.1,
                                     "respiratory_rate": 26, "oxygen_saturation": 90}}),
    ("MRN-0042118", {"age": 34, "sex": "female", "symptoms": ["headache"],
                     "vital_signs": {"heart_rate": 72, "systolic_bp": 118, "diastolic_bp": 76, "temperature": 36.8,
                                     "respiratory_rate": 14, "oxygen_saturation": 99}}),
    ("MRN-0042119", {"age": 58, "sex": "male", "symptoms": ["chest_pain", "nausea"],
                     "vital_signs": {"heart_rate": 104, "systolic_bp": 162, "diastolic_bp": 95, "temperature": 37.0,
                                     "respiratory_rate": 20, "oxygen_saturation": 96}}),
]
SHIFT = 2.0
"""The drifted population (train.py --shift); the example RetrainPolicy retrains on the same shift."""
AB_RECORDS = 8000
"""Most requests (each with its ground truth) sent through the A/B split before the test must have decided."""
AB_RATE = 60
"""Requests (each with its feedback) sent through the A/B split per second, at most."""
AB_TIMEOUT = 180.0
"""Seconds to wait for the ABTest to conclude once the traffic has been sent."""


class DemoTraffic(SandboxProcesses):
    """The steps that send requests: to each ModelDeployment, and through the A/B split."""

    def send_requests(self) -> None:
        for name in self.deployments:
            md = self._get("modeldeployment", name) or {}
            url = md["status"]["url"]
            clinician = {"Authorization": f"Bearer {DEMO_KEYS['clinician']}"}
            with httpx.Client(base_url=url, timeout=30) as client:
                predictions = []
                for patient_id, clinical_data in DEMO_PATIENTS:
                    response = client.post("/predict", headers=clinician,
                                           json={"patient_id": patient_id, "clinical_data": clinical_data})
                    self._expect(response, 200, "POST /predict")
                    predictions.append(response.json())
                self.console.block(f"POST {url}/predict (first of {len(predictions)})",
                                   json.dumps(predictions[0], indent=2))
                for result in predictions:
                    prediction = result["prediction"]
                    self.console.say(f"      {result['patient_id']}: {prediction['primary_diagnosis']} "
                                     f"(confidence {result['confidence']:.2f}, {prediction['confidence_level']}), "
                                     f"prediction_id {result['prediction_id']}")
                feedback = {"prediction_id": predictions[0]["prediction_id"],
                            "outcome": predictions[0]["prediction"]["primary_diagnosis"]}
                self._expect(client.post("/feedback", headers=clinician, json=feedback), 200, "POST /feedback")
                self.console.say("      ground truth for the first prediction sent to POST /feedback")
                denied = client.post("/predict", headers={"Authorization": "Bearer not-a-key"},
                                     json={"patient_id": "MRN-1", "clinical_data": DEMO_PATIENTS[0][1]})
                self.console.say(f"      a wrong API key is refused: {denied.status_code} {denied.json()}")
                models = client.get("/models", headers={"Authorization": f"Bearer {DEMO_KEYS['admin']}"})
                self._expect(models, 200, "GET /models")
                self.console.block(f"GET {url}/models", json.dumps(models.json(), indent=2))
            # Each record is durable (committed to PostgreSQL) before its answer is sent, so the requests above
            # are all in the database. The writer is the pod/<version>/<start time>, the pod named after the
            # predictor's workload: <name>-predictor-NNNNN-deployment-... (a Knative revision) or, in Standard
            # mode, <name>-<predictor.name>-predictor-... (KServe's Deployment for a named predictor).
            predictor = ((self._get("inferenceservice", name) or {}).get("spec") or {}).get("predictor") or {}
            workload = f"{name}-{predictor['name']}-predictor" if predictor.get("name") else f"{name}-predictor"
            where = f"writer LIKE '{workload}-%'"
            total = self.postgres.sql(f"SELECT count(*) FROM audit_records WHERE {where}").strip()
            requests = self.postgres.sql(f"SELECT record FROM audit_records WHERE {where} AND event = 'request' "
                                         "ORDER BY writer, seq LIMIT 3").strip()
            self.console.block(f"the audit log (PostgreSQL audit_records, {total} records of {name}'s runtime: the "
                               f"writer's start and one per request; patient ids hashed)", requests)


    def send_reference_traffic(self) -> None:
        self._send_population(shift=0.0, count=300, seed=101)
        self._wait_drift("False")

    def send_shifted_traffic(self) -> None:
        self._send_population(shift=SHIFT, count=600, seed=202)
        self._wait_drift("True")
        self._mark("drift detected")
        self.console.block("kubectl get md", self.cluster.kubectl("get", "md").stdout)


    def run_abtest(self) -> None:
        name, url = self.abtest["metadata"]["name"], self.abtest["status"]["url"]
        script = self.repo / "examples" / "training" / "train.py"
        labelled = json.loads(subprocess.run(
            [sys.executable, str(script), "--emit-records", str(AB_RECORDS), "--shift", str(SHIFT), "--seed", "303",
             "--with-labels"], capture_output=True, text=True, check=True, timeout=120,
            stdin=subprocess.DEVNULL).stdout)
        headers = {"Authorization": f"Bearer {DEMO_KEYS['clinician']}"}
        arms: dict[str, int] = {}
        spec = self.abtest["spec"]
        roles = {spec[role]["modelDeployment"]: role for role in ("control", "treatment")}
        sent, concluded = 0, None
        with httpx.Client(base_url=url, timeout=60, headers=headers) as client, \
                concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            def predict_and_feed_back(i: int) -> tuple[str, httpx.Response]:
                response = client.post("/predict", json={"patient_id": f"AB-{i}",
                                                         "clinical_data": labelled[i]["clinical_data"]})
                self._expect(response, 200, "POST /predict through the split")
                feedback = {"prediction_id": response.json()["prediction_id"], "outcome": labelled[i]["label"]}
                # KServe's router hands back the arm's body alone: the body names the arm that answered.
                return roles.get(str(response.json().get("model_name")), "?"), client.post("/feedback", json=feedback)

            while sent < len(labelled) and concluded is None:
                # Paced at about AB_RATE a second, so that the report shows the test's path look by look.
                paced = time.monotonic() + 1.0
                answers = list(pool.map(predict_and_feed_back, range(sent, min(sent + AB_RATE, len(labelled)))))
                concluded = self._concluded(name)
                for arm, feedback in answers:
                    arms[arm] = arms.get(arm, 0) + 1
                    # The challenger is removed only after the router has routed away from it and drained
                    # (controllers/abtest/router.py), so every answer and every ground truth gets through.
                    self._expect(feedback, 200, "POST /feedback through the split")
                sent = min(sent + AB_RATE, len(labelled))
                time.sleep(max(0.0, paced - time.monotonic()))
        self.console.say(f"      {sent} predictions with their ground truth sent through the split "
                         f"({', '.join(f'{arm} {n}' for arm, n in sorted(arms.items()))})")
        test = concluded or self._wait_until(lambda: self._concluded(name), f"ABTest {name} to conclude", AB_TIMEOUT)
        self._mark("A/B test decided")
        status = test["status"]
        estimates = status.get("estimates") or {}
        low, high = estimates.get("confidenceSequence") or (None, None)
        self.console.say(f"      decision {status['decision']}: accuracy {estimates.get('treatment'):.3f} (version "
                         f"{status['modelVersions']['treatment']}) vs {estimates.get('control'):.3f} (version "
                         f"{status['modelVersions']['control']}), always-valid interval of the difference "
                         f"[{low:+.3f}, {high:+.3f}], p = {status['alwaysValidPValue']:.3g}, after "
                         f"{status['samples']['control']} + {status['samples']['treatment']} samples")
        self.console.block("kubectl get abtests", self.cluster.kubectl("get", "abtests").stdout)


    def _send_population(self, *, shift: float, count: int, seed: int) -> None:
        script = self.repo / "examples" / "training" / "train.py"
        records = json.loads(subprocess.run(
            [sys.executable, str(script), "--emit-records", str(count), "--shift", str(shift), "--seed", str(seed)],
            capture_output=True, text=True, check=True, timeout=120, stdin=subprocess.DEVNULL).stdout)
        for name in self.deployments:
            url = (self._get("modeldeployment", name) or {})["status"]["url"]
            headers = {"Authorization": f"Bearer {DEMO_KEYS['clinician']}"}
            with httpx.Client(base_url=url, timeout=60) as client:
                for start in range(0, len(records), 100):
                    chunk = records[start:start + 100]
                    body = {"requests": [{"patient_id": f"DEMO-{seed}-{start + i}", "clinical_data": record}
                                         for i, record in enumerate(chunk)]}
                    self._expect(client.post("/batch_predict", headers=headers, json=body), 200,
                                 "POST /batch_predict")
            self.console.say(f"      {count} predictions (population shift {shift}) sent to {name} via "
                             "POST /batch_predict")

