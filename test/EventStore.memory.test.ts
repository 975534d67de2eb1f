import * as EventStore from "../src/EventStore.js"
import { eventStoreSuite } from "./conformance/EventStoreSuite.js"

eventStoreSuite("EventStore.layerMemory conformance", EventStore.layerMemory)
